"""SynthCaps: procedurally generated audio with captions, written in the release layout.

`sounds` renders the events, `captions` describes them and holds the word vectors, and
`generate` writes a whole release (wav files, computed experts, captions); the TFDS
builder is `jaxretrieval.data.tfds_builders.SynthCaps`.
"""
