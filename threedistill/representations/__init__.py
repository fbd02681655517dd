"""3D representations: each renders Cameras to a RenderOutput and owns its parameter groups."""
