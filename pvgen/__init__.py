"""pvgen: one declarative source for a kernel's paravirt_ops layer, compiled to C, asm and Python."""

__version__ = "0.1.0"
