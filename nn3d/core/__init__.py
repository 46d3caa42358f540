"""What the kernels and the layers both stand on: the arena that recycles large buffers
(arena.py) and the size arithmetic of windows and transposed convolutions (shapes.py). Nothing here
imports from the rest of nn3d."""
