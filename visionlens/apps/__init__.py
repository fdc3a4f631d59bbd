"""Applications built on the library (the demo); nothing in the library imports them."""
