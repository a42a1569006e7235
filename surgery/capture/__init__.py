"""Capture: the front ends that turn a model into a graph whose nodes carry shapes (torch.fx, torch.export)."""
