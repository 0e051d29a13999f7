import DirtyPages
