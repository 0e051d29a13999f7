print("mycelium-sim: not yet")
