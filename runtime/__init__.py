"""pvgen's runtime: CPU and hypervisor models that boot, patch and run the generated layer.

Installed as `pvgen.runtime` (the directory keeps the project layout; the import name
stays inside the project's own namespace).
"""
