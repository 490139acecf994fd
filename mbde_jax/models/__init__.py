"""Backbones split into a shared trunk and branches, and the multi-branch network built from them."""

from mbde_jax.models.backbones import BACKBONES, Backbone, get_backbone
from mbde_jax.models.multibranch import BranchNet, MultiBranchNet, MultiBranchOutput, scale_gradient

__all__ = ["BACKBONES", "Backbone", "BranchNet", "MultiBranchNet", "MultiBranchOutput", "get_backbone",
           "scale_gradient"]
