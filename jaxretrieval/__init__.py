"""jaxretrieval: text-audio retrieval with Collaborative Experts and MoEE in JAX/Flax."""
