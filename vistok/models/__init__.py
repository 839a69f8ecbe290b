"""Language-model side of joint tokenizer training.

`llm` wraps a Hugging Face causal LM that is trained on captions with a visual prefix
(`[visual tokens][caption tokens]`), and builds a tiny local LLM + BPE tokenizer for tests and laptop
runs. `connector` holds the projectors that map tokenizer codebook embeddings into the LLM's hidden
size.

Nothing in this package may import lightning, hydra, wandb or torch.distributed: it is plain
PyTorch + transformers, so it can be used and tested without the training stack.
"""
