raise RuntimeError("badplug cannot find its model zoo")
