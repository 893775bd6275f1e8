"""Models the plugin writes itself: the built-in tiny Llama and its file manifest."""
