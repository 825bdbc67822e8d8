"""streamfan's load tester: drives a deployment with chat traffic and checks every chunk arrived."""
