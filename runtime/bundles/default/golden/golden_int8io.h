// Golden vectors for model_int8io_tflite: 200 frames; states concatenated in manifest order.
#ifndef GOLDEN_INT8IO_H
#define GOLDEN_INT8IO_H

#include <stdint.h>

// shape [200, 1, 3, 1, 161]
extern const int8_t golden_int8io_input[96600];
extern const unsigned int golden_int8io_input_len;

// shape [200, 1, 2, 1, 161]
extern const int8_t golden_int8io_output[64400];
extern const unsigned int golden_int8io_output_len;

// shape [3051]
extern const int8_t golden_int8io_initial_states[3051];
extern const unsigned int golden_int8io_initial_states_len;

// shape [3051]
extern const int8_t golden_int8io_final_states[3051];
extern const unsigned int golden_int8io_final_states_len;

#endif  // GOLDEN_INT8IO_H
