/*
 * generate.h — `krserve generate` (text from a Hugging Face model directory,
 * streamed, then a stats line) and `krserve tokenize` (ids and pieces).
 */
#ifndef KR_TOOLS_GENERATE_H
#define KR_TOOLS_GENERATE_H

int kr_cmd_generate(int argc, char **argv, const char *config);
int kr_cmd_tokenize(int argc, char **argv, const char *config);
/* `krserve bench generate` (bench_generate.c). */
int kr_cmd_bench_generate(int argc, char **argv, const char *config);

#endif /* KR_TOOLS_GENERATE_H */
