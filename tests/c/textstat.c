/* A small WASI command for the wasm tests: reads the file named by argv[1], writes to the
 * file named by argv[2] the text upper-cased, then its line, word and byte counts and the
 * most frequent letter. Built at test time both natively (cc) and to wasm32-wasi (zig cc);
 * both builds must write the same bytes. */
#include <ctype.h>
#include <stdio.h>

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s INPUT OUTPUT\n", argc > 0 ? argv[0] : "textstat");
        return 2;
    }
    FILE *in = fopen(argv[1], "rb");
    if (!in) {
        perror(argv[1]);
        return 1;
    }
    FILE *out = fopen(argv[2], "wb");
    if (!out) {
        perror(argv[2]);
        return 1;
    }
    unsigned long lines = 0, words = 0, bytes = 0, letters[26] = {0};
    int c, in_word = 0;
    while ((c = fgetc(in)) != EOF) {
        bytes++;
        if (c == '\n') lines++;
        if (isspace(c)) {
            in_word = 0;
        } else if (!in_word) {
            in_word = 1;
            words++;
        }
        if (isalpha(c)) letters[tolower(c) - 'a']++;
        fputc(toupper(c), out);
    }
    int top = 0;
    for (int i = 1; i < 26; i++)
        if (letters[i] > letters[top]) top = i;
    fprintf(out, "--\nlines %lu\nwords %lu\nbytes %lu\ntop letter %c (%lu)\n", lines, words,
            bytes, 'a' + top, letters[top]);
    fclose(in);
    if (fclose(out) != 0) {
        perror(argv[2]);
        return 1;
    }
    printf("wrote %s\n", argv[2]);
    return 0;
}
