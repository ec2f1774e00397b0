def tuneforge_adaptors():
    return []
