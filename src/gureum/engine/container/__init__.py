"""The container engine: one runc bundle per system container (issue 14).

``bundle`` writes the OCI configuration a container runs under (its user namespace, limits,
capabilities, seccomp filter, mounts); ``idmap`` gives it the image's root filesystem owned by
its own uid range without copying it; ``runc`` drives runc.
"""
