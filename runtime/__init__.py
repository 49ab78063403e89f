"""Runtime: command-line interface now; backends and streaming sessions come with their issues."""
