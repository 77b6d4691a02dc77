"""From mask to camera: read a camera's captures, calibrate the fabricated element's PSFs from point-source
captures (`calibrate`), and apply a run's reconstruction to full sensor frames (`reconstruct`)."""
