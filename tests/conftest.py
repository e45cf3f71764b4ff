import jax

# Accuracy tests run in float64; float32 behaviour is tested in a subprocess
# (tests/implicit/test_float32.py) so that it sees JAX's default precision.
jax.config.update("jax_enable_x64", True)
