#include "mdp.h"
int mdp_placeholder(void) { return 0; }
