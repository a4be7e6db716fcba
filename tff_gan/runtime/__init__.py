"""Where computations run: TFF execution contexts, the worker processes they own, addresses."""
