"""Emphasis modes (A1111 ``opts.emphasis``): how ``(word:1.2)`` weights act on the CLIP output."""
from __future__ import annotations


class Emphasis:
    name = "Base"
    description = ""

    def after_transformers(self, z, multipliers):
        """``z``: (B, 77, D) hidden states of one chunk index; ``multipliers``: (B, 77)."""
        return z


class EmphasisNone(Emphasis):
    name = "None"
    description = "brackets are plain text; nothing is emphasised"


class EmphasisIgnore(Emphasis):
    name = "Ignore"
    description = "brackets are parsed, weights are ignored"


class EmphasisOriginal(Emphasis):
    name = "Original"
    description = "multiply by the weights, then restore the chunk's mean (A1111 default)"

    def after_transformers(self, z, multipliers):
        if bool((multipliers == 1).all()):
            return z  # nothing weighted: the rescale would be 1 (or 0/0 for a zero-mean chunk)
        original_mean = z.mean()
        z = z * multipliers.unsqueeze(-1)
        new_mean = z.mean()
        return z * (original_mean / new_mean) if new_mean != 0 else z


class EmphasisOriginalNoNorm(EmphasisOriginal):
    name = "No norm"
    description = "multiply by the weights without restoring the mean"

    def after_transformers(self, z, multipliers):
        return z * multipliers.unsqueeze(-1)


options = [EmphasisNone, EmphasisIgnore, EmphasisOriginal, EmphasisOriginalNoNorm]


def get_current_option(name: str) -> type[Emphasis]:
    """The mode class for ``name``; unknown names fall back to Original."""
    return next((option for option in options if option.name == name), EmphasisOriginal)
