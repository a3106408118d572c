"""Evaluation library: the paper's metrics with their reference definitions (Fréchet distance, KL, Inception
Score, CLAP score) and weight-free music metrics checked against the rendered corpus' ground truth.

- `frechet`: Fréchet distance between Gaussian fits of two embedding sets;
- `distributions`: KL divergence and Inception Score over classifier label distributions (audioldm_eval);
- `clap`: CLAP score, the mean cosine of text and audio embeddings (audiocraft's text consistency);
- `music`: key, tempo, note presence and onset estimators, caption parsing, MIREX key score;
- `alignment`: continuation / infilling / round-trip metrics against the real audio and the score's notes (note
  chroma, chroma similarity, onset F vs the notes, seam discontinuity);
- `proxy`: a weight-free per-clip embedding (FD proxy) and the instrument classifier;
- `report`: analyse two clip sets and write results.json / results.md; `compare`: paired bootstrap of two runs;
- `model`: generate from a manifest's captions with a model folder (fixed seeds) and evaluate in one go, plus the
  reference rows (backend ceiling: real audio through encode -> decode; real halves).
"""
