"""One process of the two-process rule-scoring test (run by test_scoring_multiprocess.py, not
by pytest): score_file into a fresh output and into a partial one (prefix sharing), and with
one (item, rule) row per prompt (no sharing); a bad batch size and an output written for
another rule pool must fail on every process."""

import json
import sys


def main():
    hf_dir, rules_path, in_path, root = sys.argv[1:5]
    from rmr1_jax.parallel.mesh import initialize_distributed

    initialize_distributed()
    import jax

    from rmr1_jax.checkpoint.loading import load_model
    from rmr1_jax.errors import UserError
    from rmr1_jax.parallel import make_mesh
    from rmr1_jax.inference.rules import RuleScorer, read_rules, score_file
    from rmr1_jax.text.tokenizer import load_tokenizer

    assert jax.process_count() == 2 and jax.device_count() == 8, (jax.process_count(), jax.device_count())
    mesh = make_mesh((2, 2, 2))
    model, params = load_model(hf_dir, "lm", mesh=mesh, scan_layers=False)
    tok, rules, res = load_tokenizer(hf_dir), read_rules(rules_path), {}
    try:
        RuleScorer(model, params, tok, mesh, batch_size=5)
    except UserError as e:
        res["odd_batch"] = str(e)
    shared = RuleScorer(model, params, tok, mesh, batch_size=8)  # one scorer: resume compiles nothing new
    unshared = RuleScorer(model, params, tok, mesh, batch_size=8, share_prefix=False)
    for name, scorer in (("full", shared), ("resume", shared), ("unshared", unshared)):  # resume.jsonl: partly done
        s = score_file(scorer, rules, in_path, f"{root}/{name}.jsonl")
        res[name] = [s.total, s.skipped, s.written]
    try:  # process 0 finds full.jsonl written for 3 rules: both processes fail (none waits for the other)
        score_file(shared, rules[:2], in_path, f"{root}/full.jsonl")
    except UserError as e:  # process 0's DataError; a PeerError naming it on process 1
        res["other_pool"] = str(e)
    with open(f"{root}/result.{jax.process_index()}.json", "w") as f:
        json.dump(res, f)


if __name__ == "__main__":
    main()
