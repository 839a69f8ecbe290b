"""vistok: train unified visual tokenizers, alone or jointly with an LLM."""

from vistok.export import load_tokenizer, save_tokenizer
from vistok.tokenizers.base import Tokenizer, TokenizerOutput

__all__ = ["Tokenizer", "TokenizerOutput", "load_tokenizer", "save_tokenizer"]
__version__ = "0.1.0"
