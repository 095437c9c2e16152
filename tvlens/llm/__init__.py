"""Pretrained LLMs through TransformerBridge, and shipped natural-language ICL tasks."""
