"""molmo-jax: the Molmo vision-language models in JAX/Flax."""
