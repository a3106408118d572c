"""Data, from scores to batches: render a corpus (corpus.py), read manifests (manifest.py), fit the HuBERT k-means
codebook (kmeans.py), precompute feature shards through a backend (precompute.py) in the record schema
(records.py), and the grain input pipeline that turns shards (or the synthetic source, synthetic.py) into batches
(loader.py)."""
