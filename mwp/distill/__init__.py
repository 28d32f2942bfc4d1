"""Distillation procedures: sample a teacher and keep what verifies (chain-of-thought rationales, From Large to Tiny equations)."""
