/** Short story openings for stories260K: different enough that greedy continuations differ. */
export const STORY_PROMPTS = [
  "Once upon a time",
  "Lily and Ben went to the park.",
  "The little dog",
  "One day, a girl named Sue",
  "Tom had a red ball. He",
  "It was a sunny day",
  "The bird sang",
  "Mom said",
];
