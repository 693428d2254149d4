"""Text generation utilities: Hugging Face-exact logits processing and sampling."""
