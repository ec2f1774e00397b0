import os

marker = os.environ.get("BLOCKME_MARKER")
if marker:
    with open(marker, "w") as handle:
        handle.write("imported")
