"""The frozen encoders at run time (no torch): the text encoder and its tokenizer, the Encodec codec wrapper, the
k-means codebook file, and the converted-folder format their weights are read from (convert/ writes it)."""
