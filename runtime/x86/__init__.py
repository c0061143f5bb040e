"""The x86-64 CPU model of pvgen's runtime (in progress)."""
