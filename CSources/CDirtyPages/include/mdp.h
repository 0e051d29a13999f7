#ifndef MDP_H
#define MDP_H
int mdp_placeholder(void);
#endif
