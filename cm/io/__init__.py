"""Files: paths local or on a bucket (fileio), full-disk errors, PNG grids, and the restricted .pth
reader shared by Inception, LPIPS and the EDM import (nothing from a file is executed); and the
progress output of long loops and of training (progress: a bar on a terminal, lines in a log)."""
