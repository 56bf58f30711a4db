"""Data: text (tokenizers, vocabulary, language-model streams) and data sets known by name.

Submodules imported on their own: ``series`` (time series: reading, scaling, windows, splits) and
``synthetic`` (the adding and copying problems).
"""

from .datasets import (REGISTRY, DatasetInfo, FileSpec, cache_dir, data_roots, dataset_file, dataset_info,
                       list_datasets, sha256sum, verify)
from .text import (EOS, PAD, SPECIALS, UNK, CharTokenizer, LMStream, SubwordTokenizer, Tokenizer, Vocab,
                   WordTokenizer, corpus_tokens, decode_text, encode_corpus, pad_sequences, read_corpus, read_text,
                   tokenizer_from_dict)

__all__ = [
    "read_text", "read_corpus", "decode_text", "Tokenizer", "WordTokenizer", "CharTokenizer", "SubwordTokenizer",
    "tokenizer_from_dict", "Vocab", "PAD", "UNK", "EOS", "SPECIALS", "corpus_tokens", "encode_corpus",
    "pad_sequences", "LMStream",
    "REGISTRY", "DatasetInfo", "FileSpec", "list_datasets", "dataset_info", "dataset_file", "data_roots",
    "cache_dir", "sha256sum", "verify",
]
