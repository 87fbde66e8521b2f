"""patched_yolo_infer's deep import paths (`from patched_yolo_infer.nodes.CombineDetections import ...`), kept so
that changing the package name is the only edit: each module re-exports the class of its name."""
