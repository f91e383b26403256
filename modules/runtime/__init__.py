"""How the program runs: the heavy libraries' one-time import (the job queue will move here too)."""
