// Golden vectors of the int8 TFLite parts run by the gating protocol: 200 frames [bins, 2], the gates the policy gave each branch, and the masks.
#ifndef GOLDEN_GATED_H
#define GOLDEN_GATED_H

#include <stdint.h>

// shape [200, 161, 2]
extern const float golden_frames[64400];
extern const unsigned int golden_frames_len;

// shape [200, 2]
extern const uint8_t golden_gates[400];
extern const unsigned int golden_gates_len;

// shape [200, 161, 2]
extern const float golden_masks[64400];
extern const unsigned int golden_masks_len;

#endif  // GOLDEN_GATED_H
