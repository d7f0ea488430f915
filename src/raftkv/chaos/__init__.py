"""raftkv.chaos: real-process fault injection — grows with the operator-tools issue."""
