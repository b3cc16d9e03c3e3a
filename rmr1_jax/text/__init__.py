from rmr1_jax.text.verdict import judgment_reward, normalize_winner, parse_verdict
