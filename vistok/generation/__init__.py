"""Text-to-image with the unified tokenizer: the LLM writes visual tokens from a caption."""
