from rmr1_jax.sampling.sampler import Generation, Sampler, SamplingParams, left_pad
