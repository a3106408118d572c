"""What really is shared and knows nothing of music or models: atomic file writes, owner locks, the persistent
compilation cache, spectrogram pictures."""
