"""The engine side: the contract the HTTP side talks to (`contract`), continuous batching for
generation, dynamic batching for embeddings, and text in and out of token ids. No torch here: the
model side implements the step runners this package defines."""
