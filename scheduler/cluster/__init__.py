"""`--executor ray`: lanes as placement-group actors on a Ray cluster (raycluster.py, in the
supervisor) and what runs on each node (ray_node.py). The only package that imports ray; it
speaks the same RunSpec/RunResult as the local executor, so the engine never knows."""
