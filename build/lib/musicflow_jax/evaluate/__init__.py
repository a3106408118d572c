"""Evaluation library: the paper's metrics with their reference definitions (Fréchet distance, KL, Inception
Score, CLAP score) and weight-free music metrics checked against the rendered corpus' ground truth.

- `frechet`: Fréchet distance between Gaussian fits of two embedding sets;
- `distributions`: KL divergence and Inception Score over classifier label distributions (audioldm_eval);
- `clap`: CLAP score, the mean cosine of text and audio embeddings (audiocraft's text consistency);
- `vggish`: VGGish frame embeddings for FAD and `panns`: PANNs CNN14 (16 kHz) clip embeddings for FD and logits
  for KL / IS, both PyTorch, from the released weight files, as audioldm_eval uses them (`torch_embedding`: their
  shared loading / audio checks and audioldm_eval's audio preprocessing); `ast_tagger`: transformers' AST as the
  AudioSet classifier of audiocraft's KL (standing in for PaSST); `backend_features`: FD on a MusicFlow backend's
  own semantic / acoustic frames (Flax HuBERT / Encodec ports, torch-free); `embeddings`: the common interface,
  per-clip cache and caption pairing of these models;
- `music`: key, tempo, note presence and onset estimators, caption parsing, MIREX key score;
- `alignment`: continuation / infilling / round-trip metrics against the real audio and the score's notes (note
  chroma, chroma similarity, onset F vs the notes, seam discontinuity);
- `proxy`: a weight-free per-clip embedding (FD proxy) and the instrument classifier;
- `report`: analyse two clip sets and write results.json / results.md; `compare`: paired bootstrap of two runs;
- `alignment`: same-piece scores for continuation, infilling and round trips (chroma similarity and onset
  F-measure against the real audio and the score's notes, seam discontinuity);
- `model`: generate from a manifest's captions with a model folder (fixed seeds) and evaluate in one go, plus the
  reference rows (backend ceiling: real audio through encode -> decode; real halves).
"""
