"""The torch side: model loading, the causal LM runner and its KV cache, the sentence embedder, and
sampling. The only package that imports torch and transformers."""
