"""One module per figure; `python -m figures` regenerates them."""
