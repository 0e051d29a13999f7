// The network controller.
