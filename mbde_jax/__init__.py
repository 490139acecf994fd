"""mbde_jax: multi-branch online knowledge distillation (MBDE and its baselines) in JAX/Flax."""

__version__ = "0.1.0"
